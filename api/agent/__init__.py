"""The agent API: the routes of LangGraph's Agent Protocol that `langgraph_sdk` 0.4 calls (assistants, threads,
runs, streams), served over Orchestrion's runner, its Celery `runs` queue and its Redis event streams."""
