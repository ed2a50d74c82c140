"""Text generation from any model: a native zen-coder checkpoint, a Hugging Face model folder or an
OpenAI-compatible server, behind one interface (`generation.Generator`), shared by evaluation and
serving."""
