"""The server that runs inside a model container (and under `cogkit serve`).

Split the way Cog splits it: `http` (routes), `runner` (prediction lifecycle),
`worker` (the child process in the model's own environment), `messages` (what
crosses the pipe between them), `webhooks`, `files`.
"""
