"""The debug dashboard: a web page over the gateway's API and event stream."""
