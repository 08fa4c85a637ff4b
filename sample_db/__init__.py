"""The sample shop database used by the demo, the tests and the benchmarks.

- :mod:`sample_db.models` — the declarative models (customers, categories,
  products, inventory, orders, order_items, reviews);
- :mod:`sample_db.generate` — ``build(url, scale=, seed=)`` / ``ensure(...)``:
  Alembic migrations to head, then deterministic bulk loading;
- :mod:`sample_db.workload` — ``Workload(scale, seed, write_ratio)``, its
  operations, and the ``run`` / ``run_async`` drivers.

Generated SQLite files go to ``sample_db/data/`` (git-ignored).
"""
