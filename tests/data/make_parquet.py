"""Writes the Parquet data sets `tests/data.rs` reads, with pyarrow, as the Hub stores them:

  gsm8k.parquet       GSM8K's `question`/`answer`, snappy (pyarrow's default), two row groups;
  gsm8k_zstd.parquet  the same rows, zstd (polars' default);
  verl.parquet        verl's layout: `prompt` as a chat message list, `data_source`,
                      `reward_model.ground_truth`, `extra_info` (a struct with an int);
  trl_prefs.parquet   TRL's conversational preference format (`prompt`, `chosen`, `rejected` as
                      message lists);
  bad_row.parquet     one row without its `answer` (a null), for the FILE:ROW error.

    python tests/data/make_parquet.py OUT_DIR
"""

import sys

import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
questions = [f"What is {i} + {i + 1}?" for i in range(10)]
answers = [f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}" for i in range(10)]
gsm = pa.table({"question": questions, "answer": answers})
pq.write_table(gsm, f"{out}/gsm8k.parquet", row_group_size=6)
pq.write_table(gsm, f"{out}/gsm8k_zstd.parquet", compression="zstd")

user = lambda text: [{"role": "user", "content": text}]
assistant = lambda text: [{"role": "assistant", "content": text}]
verl = pa.table({
    "data_source": ["openai/gsm8k"] * 10,
    "prompt": [user(q) for q in questions],
    "ability": ["math"] * 10,
    "reward_model": [{"style": "rule", "ground_truth": str(2 * i + 1)} for i in range(10)],
    "extra_info": [{"split": "train", "index": i} for i in range(10)],
})
pq.write_table(verl, f"{out}/verl.parquet")

prefs = pa.table({
    "prompt": [user(q) for q in questions],
    "chosen": [assistant(f"#### {2 * i + 1}") for i in range(10)],
    "rejected": [assistant(f"#### {2 * i}") for i in range(10)],
})
pq.write_table(prefs, f"{out}/trl_prefs.parquet")

bad = pa.table({"question": questions[:3], "answer": [answers[0], None, answers[2]]})
pq.write_table(bad, f"{out}/bad_row.parquet")
print(f"wrote 5 Parquet files to {out} with pyarrow {pa.__version__}")
