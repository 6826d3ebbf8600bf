"""Runs INSIDE byaldi's own virtual environment (never imported by mmrag): index a folder, answer queries, print JSON.

Usage: BYALDI_PYTHON bench/byaldi_peer_run.py MODEL_DIR CORPUS QUERIES_JSON INDEX_ROOT [DEVICE]
"""

import json
import sys
import time

from byaldi import RAGMultiModalModel

model_dir, corpus, queries_file, index_root = sys.argv[1:5]
device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
queries = json.loads(open(queries_file).read())
began = time.perf_counter()
model = RAGMultiModalModel.from_pretrained(model_dir, index_root=index_root, verbose=0, device=device)
load_s = time.perf_counter() - began
began = time.perf_counter()
model.index(input_path=corpus, index_name="peer", store_collection_with_index=False, overwrite=True)
index_s = time.perf_counter() - began
began = time.perf_counter()
for query in queries:
    model.search(query, k=10)
if device.startswith("cuda"):
    import torch

    torch.cuda.synchronize()
query_s = time.perf_counter() - began
print(json.dumps({"load_s": load_s, "index_s": index_s, "query_s": query_s, "pages": len(model.model.indexed_embeddings)}))
