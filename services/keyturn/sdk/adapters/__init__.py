"""Agent-framework adapters over the SDK, each importable only with its framework installed:
``langgraph`` (LangGraph and LangChain tools) and ``pydantic_ai`` (pydantic-ai tools); ``common``
holds what they share."""
