"""Reads a query_range through the real Prometheus API client (PyPI prometheus-api-client).

usage: client.py <base-url> <query> <start-unix> <end-unix> <step>
Prints the client's result (a list of {metric, values}) as JSON.
"""
import datetime
import json
import sys

from prometheus_api_client import PrometheusConnect

url, query, start, end, step = sys.argv[1:6]
utc = datetime.timezone.utc
pc = PrometheusConnect(url=url, disable_ssl=True)
result = pc.custom_query_range(
    query=query,
    start_time=datetime.datetime.fromtimestamp(float(start), tz=utc),
    end_time=datetime.datetime.fromtimestamp(float(end), tz=utc),
    step=step,
)
print(json.dumps(result))
