"""Test doubles, kept out of the product modules: a fake OpenAI-protocol server
(``python -m cluster_service.testing.openai_server``), synthetic concept tables, and the sliding-window
counters that check a rate limit from a server's log. Tests and benchmarks use them; so may users who
want to try ``cluster-service annotate --backend openai`` without a key."""
