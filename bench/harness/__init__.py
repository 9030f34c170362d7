"""The cluster pull benchmark: Spegel's `generate` / `measure` / `analyze`, on one machine or a
real cluster.

Pure parts (cases, rollout batching, statistics, kubelet events, reports) are
apart from the parts that start processes or call kubectl.
"""
