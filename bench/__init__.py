"""The benchmark of `make bench`: the service under a bounded burst, against an SMTP ceiling.

`bench.run` is the entry point; `bench.sink` the counting SMTP sink (its own process),
`bench.load` the load generators (wrk with a Lua script, or a Python client), `bench.services`
the service and Redis processes, `bench.ceiling` plain smtplib over reused connections, and
`bench.report` the table, the JSON and the Markdown summary. Never part of `make test`.
"""
