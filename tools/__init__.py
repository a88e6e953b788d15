"""The MCP client layer: every tool an agent calls, ours in-process and third-party ones, through one toolbox."""
