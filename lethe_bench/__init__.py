"""Benchmarks of Lethe, apart from the library (as open_clip_train sits beside open_clip).

    python -m lethe_bench.federation     the default federation, its retrain reference, the ledger
    lethe bench                          every unlearning method against the retrain reference
    python -m lethe_bench.real_images    real-images: does the original know the erased category (vs retrain)?

Each writes its section of docs/benchmarks.md with the command that produced it.
"""
