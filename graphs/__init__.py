"""LangGraph state machines that wire the agents, their state schema and checkpointer factory."""
