"""The HTTP front door: OpenAI- and Anthropic-compatible endpoints in front of the queue.

Every request becomes a Job on pb.jobs.<team>.<intent> through the SDK Client, so admission,
routing, pool caps, retries, fallbacks and cost records apply as to any job; the terminal
Result (and, for streams, the job's chunk subject) is turned back into each API's own shape.
"""
