"""Planner, retriever and executor agents: plain functions of graph state and injected deps."""
