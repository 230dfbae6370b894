"""Bulk jobs: captions → resumable, sharded embeddings (`sdclip embed`).

readers (caption sources, streamed) → plan (spec, folder checks, validation scan) → encode (fixed-size
conditioning per caption) → work (one shard, written atomically) → driver (manifest, resume) → engines
(local, ray_engine); formats/ writes the trainers' own caches (kohya, musubi, simpletuner, ai-toolkit); varlen drops padding; verify re-checks a finished folder;
overwrite decides which files `--overwrite` may remove (the old manifest is untrusted input).
"""
