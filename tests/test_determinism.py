"""Stage one on CPU is a pure function of its inputs: two runs give the same bytes.

The second run decodes images in two worker processes instead of none, so the
batches arrive in another interleaving; the cache must not notice.
"""

from conftest import assert_same_cache, cache_dir_of, load_all, with_flag

from pipeline.__main__ import main
from pipeline.embed import cache


def test_two_runs_give_byte_identical_caches(embed_args, tmp_path):
    first, second = embed_args, with_flag(with_flag(embed_args, "--cache-dir", str(tmp_path / "again")),
                                          "--num-workers", "2")
    assert main(first) == 0 and main(second) == 0
    one, two = cache.read_manifest(cache_dir_of(first)), cache.read_manifest(cache_dir_of(second))
    assert one["fingerprint"] == two["fingerprint"]
    for split in one["splits"]:
        assert one["splits"][split]["parts"] == two["splits"][split]["parts"]  # same files, same sha256
    assert_same_cache(load_all(cache_dir_of(first)), load_all(cache_dir_of(second)), exact=True)
    assert (tmp_path / "cache" / "skipped.tsv").read_bytes() == (tmp_path / "again" / "skipped.tsv").read_bytes()
