"""Random manifests and random bytes named like photos: ingest never raises, keeps every
good photo exactly once and gives every bad row a reason."""

import csv
import hashlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from naturelens.workspace.core import Workspace


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + seed, 8), (seed * 40 % 256, 10, 200)).save(buf, "JPEG")
    return buf.getvalue()


GOOD = [_jpeg(i) for i in range(4)]

row = st.one_of(
    st.tuples(st.just("good"), st.integers(0, len(GOOD) - 1)),
    st.tuples(st.just("junk"), st.binary(max_size=64)),
    st.tuples(st.just("cut"), st.integers(0, len(GOOD) - 1)),
    st.tuples(st.just("missing"), st.just(None)),
    st.tuples(st.just("empty"), st.just(None)),
    st.tuples(st.just("badcoord"), st.text(max_size=6)),
)
manifest_rows = st.lists(
    st.tuples(
        row,
        st.one_of(st.none(), st.text(alphabet="abc", min_size=1, max_size=2)),
        st.sampled_from(["", "Nature", "Sport", "nope", "[/]x"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rows=manifest_rows, rule=st.sampled_from(["first", "last"]))
def test_random_manifests_lose_nothing_and_explain_every_bad_row(rows, rule):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines, expect_bad, good_ids = [], set(), set()
        kept_for_id: dict[str, int] = {}
        for number, ((kind, value), row_id, label) in enumerate(rows, start=1):
            name = tmp / f"f{number}.jpg"
            line = {"id": row_id or "", "path": str(name), "label": label, "lat": "", "lon": ""}
            if kind == "good":
                name.write_bytes(GOOD[value])
            elif kind == "junk":
                name.write_bytes(value)
            elif kind == "cut":
                name.write_bytes(GOOD[value][: len(GOOD[value]) // 2])
            elif kind == "empty":
                line["path"] = ""
            elif kind == "badcoord":
                name.write_bytes(GOOD[0])
                line["lat"], line["lon"] = value + "x", "1"
            lines.append(line)
            if row_id:
                if rule == "last" or row_id not in kept_for_id:
                    kept_for_id[row_id] = number
        for (
            number,
            ((kind, value), row_id, _),
        ) in enumerate(rows, start=1):
            lost = bool(row_id) and kept_for_id[row_id] != number
            if kind == "good" and not lost:
                good_ids.add(hashlib.sha256(GOOD[value]).hexdigest())
            else:
                expect_bad.add(number)
        manifest = tmp / "m.csv"
        with open(manifest, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["id", "path", "label", "lat", "lon"])
            writer.writeheader()
            writer.writerows(lines)

        ws = Workspace.create(tmp / "ws", "flips")
        report = ws.ingest([manifest], duplicates=rule)
        assert report.seen == len(rows)
        refs = ws.db.execute("SELECT ref, failure FROM refs").fetchall()
        assert len(refs) == len(rows)  # every row is recorded, good or bad
        readable = ws.photo_ids()
        assert len(readable) == len(set(readable))
        assert good_ids <= set(readable)  # every good photo, exactly once
        photo_failures = dict(ws.db.execute("SELECT photo_id, failure FROM photos").fetchall())
        ref_photo = dict(ws.db.execute("SELECT ref, photo_id FROM refs").fetchall())
        for ref, failure in refs:
            reason = failure or photo_failures.get(ref_photo[ref])
            good = ref_photo[ref] in good_ids and failure is None
            assert good or reason, ref  # a bad row always says why
        assert report.failed == len(expect_bad)
        ws.close()
