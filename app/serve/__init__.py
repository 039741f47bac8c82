"""`arbiter serve`: a local reward-model server in the dialects RLHF tools and apps speak.

OpenRLHF's remote reward model (``/get_reward``), Cohere/Jina/vLLM rerank, vLLM classify and
Arbiter's own ``/v1/score``, over any model the engine opens, with dynamic batching across
requests, backpressure (429), typed errors, bearer auth and Prometheus metrics. Needs the
``serve`` extra (FastAPI, uvicorn, prometheus-client); nothing else in Arbiter imports it.

>>> from app.serve.app import create_app                          # doctest: +SKIP
>>> from app.serve.settings import ModelSpec, Settings            # doctest: +SKIP
>>> app = create_app(Settings(models=(ModelSpec("default", "default"),)))  # doctest: +SKIP
"""
