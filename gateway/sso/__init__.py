"""Single sign-on with OpenID Connect: the settings (``[oidc]``) and the relying party's side of
the authorization code flow with PKCE (:mod:`.client`). The browser routes that use it are
:mod:`gateway.api.sso`'s. A leaf package: it imports nothing of the gateway but a body reader."""
