"""The Redis job store: key names, Lua scripts and the client that runs them."""
