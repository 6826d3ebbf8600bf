"""scripts/qdrant-smoke: index -> search -> delete against a Qdrant server (or, with --path, the embedded engine),
through mmrag's job, search path and stores, with tiny random-init models; every step checked, then cleaned up."""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from PIL import Image
from rich.console import Console

from mmrag.errors import MmragError
from mmrag.config import DatabaseSettings, EmbedderSettings, IndexSettings, IngestSettings, QdrantSettings, Settings


def _pdf(path: Path, lines: list[str]) -> Path:
    """A one-page PDF with a text layer, written by hand (no PDF library needed)."""
    text = " ".join(f"({line}) Tj T*" for line in lines)
    stream = f"BT /F1 14 Tf 16 TL 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


# The report, a line a step, never wrapped (servers' messages are long) and never read as rich markup.
console = Console(soft_wrap=True, highlight=False)


def say(line: str) -> None:
    console.print(line, markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/qdrant-smoke", description=__doc__)
    parser.add_argument("url", nargs="?", help="the Qdrant server's REST URL, e.g. http://localhost:6333")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--path", type=Path, default=None, help="the embedded engine in DIR instead of a server")
    args = parser.parse_args(argv)
    if (args.url is None) == (args.path is None):
        parser.error("give a server URL, or --path DIR for the embedded engine")

    from mmrag.indexing import delete_documents, run_index
    from mmrag.index.qdrant_index import close_clients, drop_collections
    from mmrag.retrieval import search
    from mmrag.services import build_services
    from mmrag.store import repository

    prefix = f"mmrag-smoke{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="mmrag-qdrant-smoke-"))
    qdrant = QdrantSettings(url=args.url, api_key=args.api_key, path=args.path, prefix=prefix)
    settings = Settings(
        data_dir=work / "data",
        database=DatabaseSettings(url=f"sqlite:///{work / 'mmrag.db'}"),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
        index=IndexSettings(backend="qdrant", multivector_search="candidates", qdrant=qdrant),
    )
    corpus = work / "corpus"
    corpus.mkdir()
    invoice = _pdf(corpus / "invoice.pdf", ["Invoice INV-2024-0117", "Total due: 1,250.00 EUR"])
    _pdf(corpus / "menu.pdf", ["Lunch menu", "Tomato soup 4.50"])
    Image.new("RGB", (96, 72), (200, 40, 40)).save(corpus / "photo.png")

    failed: list[str] = []
    try:
        services = build_services(settings)
    except MmragError as exc:
        say(f"FAIL start: {exc}\nqdrant-smoke: FAILED")
        return 1

    def step(name: str, ok: bool, detail: str = "") -> None:
        say(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if not ok:
            failed.append(name)

    try:
        report = run_index(services, [corpus])  # the server's first call: opening the collections
        step("index 3 files", report.counts["indexed"] == 3, f"{report.counts}")
        stores = services.collections.stores(1).by_retriever()
        names = sorted(store.name for store in stores.values())
        step("one Qdrant collection per retriever", len(names) == 3 and all(n.startswith(prefix) for n in names),
             ", ".join(names))
        hits = search(services, "default", text="INV-2024-0117", k=3, retrievers=["lexical"])
        step("BM25 (sparse vectors) finds the invoice", bool(hits) and hits[0].path.endswith("invoice.pdf"))
        hits = search(services, "default", text="invoice total", k=3, retrievers=["colpali"])
        step("multi-vector prefetch + MaxSim rerank returns pages", len(hits) == 3)
        hits = search(services, "default", image=Image.open(corpus / "photo.png"), k=1)
        step("image search finds the photo", bool(hits) and hits[0].path.endswith("photo.png"))
        delete_documents(services, "default", paths=[str(invoice)])
        gone = all(not h.path.endswith("invoice.pdf") for h in search(services, "default", text="invoice", k=10))
        step("a deleted document is gone", gone)
        with services.sessions() as session:
            agree = {name: repository.embedded_page_ids(session, 1, name) == {int(i) for i in store.ids()}
                     for name, store in stores.items()}
        step("SQL's page ids equal each collection's after the delete", all(agree.values()) and len(stores["clip"]) == 2,
             f"{agree}, clip points {len(stores['clip'])}")
    except MmragError as exc:
        step("the server answered", False, str(exc))
    finally:
        services.close()
        try:
            dropped = drop_collections(qdrant, settings.storage_dir() / "collections" / "1")
            say(f"dropped {len(dropped)} collections")
        except MmragError as exc:
            say(f"could not drop the smoke test's collections ({prefix}-*): {exc}")
        close_clients()
    say("qdrant-smoke: " + ("passed" if not failed else f"FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
