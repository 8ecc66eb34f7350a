"""The token shards: every record of the cleaned corpus encoded once per tokenizer, one shard per
landing batch (training/curriculum/tokens.py); a batch is encoded again only when its corpus part or
the tokenizer changes."""

import dagster as dg

from assets.cleaning import cleaned_corpus
from assets.metadata import md_table
from assets.resources import Kiln
from assets.tokenizer import tokenizer
from training.curriculum.tokens import encode_corpus


@dg.asset(
    group_name="data",
    deps=[cleaned_corpus, tokenizer],
    kinds={"numpy", "parquet"},
    description="Each batch's records as tokens (uint16 while the vocabulary fits), with each record's offset "
    "and count, encoded once per tokenizer: the curriculum's stages select from them and packing copies them.",
)
def tokenized_corpus(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    layout = kiln.layout
    shards = encode_corpus(layout.cleaned_corpus, layout.tokenizer, layout.tokenized_corpus, context.log.info)
    encoded = [b for b, s in shards.items() if not s["reused"]]
    return dg.MaterializeResult(
        metadata={
            "batches": md_table(["batch", "records", "tokens", "encoded now"], [(b, s["records"], s["tokens"], not s["reused"]) for b, s in shards.items()]),
            "records": sum(s["records"] for s in shards.values()),
            "tokens": sum(s["tokens"] for s in shards.values()),
            "batches_encoded": len(encoded),
            "batches_reused": len(shards) - len(encoded),
            "path": dg.MetadataValue.path(layout.tokenized_corpus),
        }
    )
