# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. The released checkpoints, reproduced
#
# Each released checkpoint is evaluated with the published protocol (`score_linear` grades, 2,000 sampled
# queries, top-1000 retrieval, every split; fp16 encoding on a GPU) in two document configurations, query →
# image (the publisher's scripts) and image 0.9 + title 0.1 (this book's default), and set beside its
# published row with a PASS / FAIL per value (`book/expected.yaml`, `reproduce:`). The same as
# `make reproduce DATA_DIR=... IMAGE_ROOT=... CHECKPOINTS="..."`. Without checkpoints (the default book)
# this chapter lists what to download.

# %% tags=["parameters"]
data_dir = ""         # the Marqo-GS-10M folder (e.g. marqo_gs_full_10m/); "" -> the embedded synthetic shop
image_root = ""       # "" -> <data_dir>/images
test_csv = ""         # instead of data_dir: one split CSV, e.g. the publisher's tiny test query_tiny.csv ...
corpus = ""           # ... with its corpus JSON (corpus_tiny.json)
checkpoints = ""      # released checkpoint files, space-separated; "" -> what to download
architecture = ""     # open_clip model of every checkpoint; "" -> from each file name (vitb32 -> ViT-B-32)
expected_file = ""    # "" -> book/expected.yaml
output_dir = ""       # "" -> build/reproduce

# %%
from IPython.display import Markdown, display

from gclcore import paths, reproduce

protocol = reproduce.load_protocol(paths.resolve_book_file(expected_file, "expected.yaml"))
display(reproduce.published_table(protocol))

# %%
given = [str(paths.absolute(c)) for c in checkpoints.split()]
if not given:
    display(Markdown("No checkpoints given (`make book CHECKPOINTS=\"a-states.pt b-states.pt\" DATA_DIR=...`, or "
                     "`-p checkpoints ...` with papermill).\n\n```text\n" + reproduce.download_instructions(protocol)
                     + "\n```"))
else:
    source = ({"test_csv": str(paths.absolute(test_csv)), "corpus": str(paths.absolute(corpus))} if test_csv
              else {"data_dir": str(paths.resolve_data_dir(data_dir))})
    out = paths.absolute(output_dir) if output_dir else paths.repo_root() / "build" / "reproduce"
    table = reproduce.run(given, protocol, **source, image_root=str(paths.absolute(image_root)) if image_root else None,
                          out=out, model=architecture or None)
    display(reproduce.styled(table, protocol))
    if reproduce.verdicts_withheld(table, protocol):
        display(Markdown(f"Verdicts n/a: this in-domain split is smaller than the published data's "
                         f"({protocol.published_min_rows:,} rows or more), so the published values are only shown."))
    display(Markdown("\n".join(f"- `{key}`: " + ("**reproduced** (in at least one document configuration)" if ok
                                                   else "**not reproduced** (in no document configuration)")
                               for key, ok in reproduce.passed(table, protocol).items())))
    reproduce.plot(table, protocol)
