"""The chaos soak (issue 9): load through two bridges while components are kill -9'd and
restarted, then a verifier checks from the log that every journaled request got exactly one
final result and that no client got a 2xx for a request that is not journaled.

    python -m bench.soak --rate 20 --minutes 3 --seed 1

See bench/soak/run.py for the options and docs/delivery.md for what it checks and why.
"""
