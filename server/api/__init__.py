"""HTTP APIs of the gateway. Routers live in the submodules (admin.router,
spend.router, ...); auth and caller-format errors in deps. Nothing is
imported here so that importing one router never drags in the others."""
