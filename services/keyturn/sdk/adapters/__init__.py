"""Agent-framework adapters over the SDK, each importable only with its framework installed:
``langgraph`` (LangGraph and LangChain tools)."""
