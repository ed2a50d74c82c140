"""The HTTP server editors and tools talk to (`zen-coder serve`): OpenAI, llama.cpp and Tabby
endpoints in front of one backend (a native model's engine, a Hugging Face model, or an
OpenAI-compatible upstream such as vLLM), with API keys, limits and Prometheus metrics."""
