"""rfork's wire contract: what crosses a process boundary, defined once and typed at both ends.

- ``models``: every HTTP body in both directions (scheduler, agent, errors);
- ``errors``: one table of error codes -> HTTP status -> exception, raised by services and clients alike;
- ``http``: ``install(app, ...)``: body limit, bearer auth, error shape, /health and /metrics;
- ``clients``: ``SchedulerClient`` and ``AgentClient``, returning the models (``transport=`` for in-process tests);
- ``manifest``: parsing and matching of ``{name: [ptr, numel, element_size]}`` manifests;
- ``auth``, ``seed_info``, ``units``: tokens and grants, SGLang's seed API, sizes and rates.

Imports only pydantic, httpx and starlette at module level, so every process can depend on it.
"""
