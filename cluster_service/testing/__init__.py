"""Test doubles, kept out of the product modules: a fake OpenAI-protocol server
(``python -m cluster_service.testing.openai_server``), synthetic concept tables, the sliding-window
counters that check a rate limit from a server's log, synthetic and small run stores for the report
and export (``runs``), headless Chromium for the report's page tests (``browser``), and test hosts
made of network namespaces with a Ray node in each (``hosts``, root only). Tests and
benchmarks use them; so may users who want to try ``cluster-service annotate --backend openai``
without a key."""
