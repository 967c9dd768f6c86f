// Notebook parameters, read in the browser from the cell tagged "parameters" (papermill's
// convention): simple `name = literal` lines (int, float, str, bool, None), with their
// defaults and inferred types. Anything else in the cell is left alone (not offered).

const NAME = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*[A-Za-z_][\w.[\], ]*)?=\s*(.+?)\s*$/;
const KEYWORDS = new Set(["False", "None", "True", "and", "as", "assert", "async", "await",
  "break", "class", "continue", "def", "del", "elif", "else", "except", "finally", "for",
  "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass",
  "raise", "return", "try", "while", "with", "yield"]);

/** The value of a Python string literal ('...' or "...", simple escapes), or undefined. */
function pyString(text) {
  const match = /^([rRbBuU]?)(['"])(.*)\2$/.exec(text);
  if (!match || /^[bB]$/.test(match[1])) return undefined;
  const [, prefix, quote, body] = match;
  if (body.includes(quote) && !body.includes("\\")) return undefined;
  if (/^[rR]$/.test(prefix)) return body;
  const escapes = { n: "\n", t: "\t", r: "\r", "\\": "\\", "'": "'", '"': '"', 0: "\0" };
  let out = "";
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== "\\") { out += body[i]; continue; }
    const next = body[++i];
    if (next === undefined) return undefined;
    out += escapes[next] !== undefined ? escapes[next] : `\\${next}`;
  }
  return out;
}

/** Strip a trailing comment that is not inside a string. */
function withoutComment(text) {
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) { if (c === "\\") i++; else if (c === quote) quote = null; }
    else if (c === "'" || c === '"') quote = c;
    else if (c === "#") return text.slice(0, i).trim();
  }
  return text.trim();
}

/** A Python literal as {type, value}: int, float, str, bool or none; null if not simple. */
export function parseLiteral(raw) {
  const text = withoutComment(raw);
  if (/^[-+]?\d+$/.test(text.replaceAll("_", ""))) {
    return { type: "int", value: Number(text.replaceAll("_", "")) };
  }
  if (/^[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?$/.test(text)) {
    return { type: "float", value: Number(text.replaceAll("_", "")) };
  }
  if (text === "True" || text === "False") return { type: "bool", value: text === "True" };
  if (text === "None") return { type: "none", value: null };
  const str = pyString(text);
  return str === undefined ? null : { type: "str", value: str };
}

/** The parameters of a notebook (parsed JSON): [{name, type, value}] in cell order; [] when
 *  no code cell is tagged "parameters". A name set twice keeps its last value. */
export function findParameters(notebook) {
  const cells = Array.isArray(notebook && notebook.cells) ? notebook.cells : [];
  const cell = cells.find((c) => c && c.cell_type === "code"
    && Array.isArray(c.metadata && c.metadata.tags) && c.metadata.tags.includes("parameters"));
  if (!cell) return [];
  const source = Array.isArray(cell.source) ? cell.source.join("") : String(cell.source || "");
  const found = new Map();
  for (const line of source.split("\n")) {
    const match = NAME.exec(line);
    if (!match || KEYWORDS.has(match[1])) continue;
    const literal = parseLiteral(match[2]);
    if (literal) found.set(match[1], { name: match[1], ...literal });
  }
  return [...found.values()];
}

/** A form field's text as the parameter's type; {error} when it does not fit. */
export function readValue(param, text, checked) {
  if (param.type === "bool") return { value: Boolean(checked) };
  const trimmed = text.trim();
  if (param.type === "int") {
    return /^[-+]?\d+$/.test(trimmed) ? { value: Number(trimmed) } : { error: "a whole number" };
  }
  if (param.type === "float") {
    const number = Number(trimmed);
    return trimmed !== "" && isFinite(number) ? { value: number } : { error: "a number" };
  }
  if (param.type === "none") {
    if (trimmed === "" || trimmed === "None") return { value: null };
    try { return { value: JSON.parse(trimmed) }; } catch { return { value: text }; }
  }
  return { value: text };
}

/** The parameters whose value differs from the notebook's default (what the spec sends). */
export function changedParameters(params, values) {
  const changed = {};
  for (const param of params) {
    if (!(param.name in values)) continue;
    const value = values[param.name];
    if (JSON.stringify(value) !== JSON.stringify(param.value)) changed[param.name] = value;
  }
  return changed;
}
