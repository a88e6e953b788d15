"""Transport-free operations: plain async functions of (services, tenant, request).

The MCP tools, the HTTP routes and the agents' in-process tools all call these; the tenant is
resolved once per request by the adapter (from credentials, or in a worker from the stored run
record) and passed down explicitly.
"""
