"""``python -m pyramid_core generate-batch``: many videos from a JSONL file, over every rank of a
``torchrun`` launch, resumable (see :mod:`.jobs` for the file, :mod:`.run` for the run)."""

from .jobs import JOB_FIELDS, Job, JobFileError, read_jobs
from .run import read_records, run_batch, save_latents, share_out, write_results

__all__ = ["JOB_FIELDS", "Job", "JobFileError", "read_jobs", "read_records", "run_batch", "save_latents",
           "share_out", "write_results"]
