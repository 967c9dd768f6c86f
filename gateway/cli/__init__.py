"""The `hpcgw` command line: server, admin and client subcommands."""
