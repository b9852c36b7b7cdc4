"""Hostile split files: each is repaired and counted, or refused with an error naming the file and line."""

import re

import pytest
from conftest import cache_dir_of, with_flag

from pipeline.__main__ import main
from pipeline.data.splits import read_split
from pipeline.embed import cache

HEADER = "id\tclean_title\t2_way_label\tlocal_image_path"


def tsv(*rows, header=HEADER, newline="\n"):
    return (newline.join([header, *rows]) + newline).encode()


LONG_TITLE = " ".join(["shocking news"] * 40)  # 80 words: over --max-length 16


def repaired_val_split():
    """A split with every accepted oddity, as bytes, and the ids that must come out embedded, in order."""
    rows = [
        "v1\tthe cat\t1.0\timages/va0000.jpg",  # label 1.0
        'v2\t"the ""dog"" news"\t"1"\timages/va0001.jpg',  # a quoted field with doubled quotes; label "1"
        'v3\tsays "hi" to a man\t 0 \timages/va0002.jpg',  # quotes inside an unquoted title; label padded
        'v4\t"a car\twith a tab"\t0\timages/va0003.jpg',  # a tab inside a quoted title
        "v5\t\t1\timages/va0004.jpg",  # empty title
        "v6\t   \t0\timages/va0005.jpg",  # whitespace-only title
        f"v7\t{LONG_TITLE}\t1\timages/va0006.jpg",  # cut by the tokenizer, counted
        "",  # a blank line
        "v1\tthe cat again\t1\timages/va0007.jpg",  # the same id with the same label: a reported duplicate
    ]
    text = "\r\n".join([HEADER + "\tscore\tsubreddit"] + [row + "\t12\tpics" if row else row for row in rows])
    data = b"\xef\xbb\xbf" + (text + "\r\n").encode()  # BOM, CRLF, extra columns
    return data.replace(b"the cat again", b"caf\xe9 cat again"), ["v1", "v2", "v3", "v4", "v7", "v1"]  # Latin-1 byte


def test_accepted_oddities_are_repaired_and_counted(embed_args, dataset, capsys):
    data, embedded = repaired_val_split()
    (dataset / "val.tsv").write_bytes(data)
    train = dataset / "train.tsv"
    # A training file of two classes whose fake rows all have empty titles: embedded, train holds one class.
    # (A file with one class only is refused before embedding: test_labels.py.)
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0]] + [re.sub(r"\t[^\t]*(\t0\timages/)", r"\t\1", line) for line in lines[1:]])
                     + "\n")
    args = with_flag(embed_args + ["--max-length", "16"], "--splits", "train,val")
    assert main(args) == 0
    out = capsys.readouterr().out
    manifest = cache.read_manifest(cache_dir_of(args))
    val, train_info = manifest["splits"]["val"], manifest["splits"]["train"]
    assert list(cache.load_split(cache_dir_of(args), "val").ids) == embedded
    assert val["skipped_by_reason"] == {"empty_title": 2}
    assert (val["duplicate_ids"], val["non_utf8_rows"], val["truncated_titles"]) == (1, 1, 1)
    assert val["class_counts"] == {"fake": 2, "real": 4}
    assert train_info["class_counts"] == {"fake": 0, "real": 12}  # visible before stage two divides by zero
    assert re.search(r"^val .*empty_title=2; truncated_titles=1; duplicate_ids=1; non_utf8_rows=1$", out, re.M)
    assert "warning: split 'train' has embedded rows of one class only (real)" in out
    rows = read_split(dataset, "val")
    assert rows.texts[1:4] == ['the "dog" news', 'says "hi" to a man', "a car\twith a tab"]
    assert rows.texts[7] == "caf\ufffd cat again" and rows.lines == [2, 3, 4, 5, 6, 7, 8, 10]


@pytest.mark.parametrize("content,message", [
    (tsv("a\tthe cat\t1\timages/x.jpg", header="id\tscore\t2_way_label\tlocal_image_path"),
     r"missing column\(s\) clean_title or title; found: id, score"),
    (tsv("a\tthe cat\t1\timages/x.jpg", "b\tstray\ttab\t0\timages/y.jpg"),
     r"line 3 has 5 fields, the header has 4 \(a tab inside a title\?"),
    (tsv("a\tthe cat\t1\timages/x.jpg", "b\tno path\t0"), r"line 3 has 3 fields, the header has 4"),
    (tsv('a\t"the cat\t1\timages/x.jpg', "b\tdog\t0\timages/y.jpg", 'c\tcar"\t1\timages/z.jpg'),
     r"line 2: a quoted field runs on to line 4"),
    (tsv('a\t"Breaking" news\t1\timages/x.jpg'), r"line 2: not valid tab-separated text"),
    (tsv("a\tt\ttrue\ti.jpg", "", "b\tt\t2\ti.jpg", "c\tt\t-1\ti.jpg", "d\tt\t\ti.jpg", newline="\r\n"),
     r"4 row\(s\) are not, e.g. line 2: 'true'; line 4: '2'; line 5: '-1'; line 6: ''"),
    (tsv("a\tt\t1\ti.jpg", "", "a\tu\t0\tj.jpg"), r"id 'a' appears on line 2 with label 1 and on line 4 with label 0"),
    (b"", r"the file is empty"),
    (b"\n\r\n", r"the file is empty"),
])
def test_malformed_tables_are_errors_naming_the_line(embed_args, dataset, capsys, content, message):
    (dataset / "test.tsv").write_bytes(content)
    assert main(embed_args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test.tsv" in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not (dataset.parent / "cache").exists()  # refused before the cache is touched


def test_bad_image_error_names_the_real_line_after_blank_lines(embed_args, dataset, capsys):
    (dataset / "test.tsv").write_bytes(
        tsv("a\tthe cat\t1\timages/te0000.jpg", "", "", "b\tthe dog\t0\timages/gone.jpg"))
    assert main(with_flag(embed_args, "--splits", "test") + ["--on-bad-image", "fail"]) == 2
    assert "test.tsv: line 5, column local_image_path 'images/gone.jpg': missing file" in capsys.readouterr().err


def test_a_max_length_beyond_the_text_models_positions_is_refused_up_front(embed_args, capsys):
    assert main(embed_args + ["--max-length", "129"]) == 2  # the tiny BERT has 128 positions
    err = capsys.readouterr().err
    assert "--max-length 129: the text model" in err and "takes at most 128 tokens" in err
