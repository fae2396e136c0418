"""tuning/files.py: atomic writes; a library and its sidecar published as one pair."""

from __future__ import annotations


def test_two_compiles_to_one_output_publish_whole_pairs(tmp_path):
    """The library and its sidecar are renamed into place together, under a lock: whatever the
    interleaving, the pair on disk comes from one writer, and no temporary is left."""
    import json
    import threading

    from tuning.files import publish_library

    path = str(tmp_path / "k.so")

    def writer(tag):
        def write(tmp):
            with open(tmp, "w") as f:
                f.write(tag)
        for _ in range(50):
            publish_library(path, write, str(tmp_path / "k.json"), {"library": tag})

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert open(path).read() == json.load(open(tmp_path / "k.json"))["library"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.so.lock", "k.json", "k.so"]
