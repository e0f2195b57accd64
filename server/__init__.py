"""The Interlock HTTP server: client API, worker (RXON) API, public endpoints.

Start it with `interlock serve`; build it in code with `server.app.build_app`.
"""
