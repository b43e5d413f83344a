"""Download pre-tokenized FineWeb-10B GPT-2 shards from the Hugging Face hub.

Fetches fineweb_val_000000.bin and fineweb_train_000001.bin .. _{N:06d}.bin from
the dataset repo kjj0/fineweb10B-gpt2 into data/fineweb10B/. A speedrun reads
8 train shards; the default of 9 leaves a spare. Shards already present and
valid are kept; a corrupt or partial one is fetched again. Each file is
downloaded into a temporary folder and moved into place only once it passes
the shard check, so an interrupted run never leaves a half-written shard, and
a file already there (even a corrupt one) stays until its replacement has
arrived whole. The temporary folder of a killed run is removed by the next.
Errors are one `error:` line: exit status 2 for a wrong command line (a shard
count out of range, an --output_dir that is a file or cannot be written), 1 for
a failed download.

    python data/cached_fineweb10B.py        # val + 9 train shards (~2 GB)
    python data/cached_fineweb10B.py 103    # everything
"""
import argparse
import errno
import glob
import importlib.util
import os
import shutil
import sys
import tempfile

from tqdm import tqdm

# Run as `python data/cached_fineweb10B.py` from any directory: the repository root goes on sys.path so
# the tokenizer is always the one module data.tokenizer.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.cli import USAGE_ERROR, ArgumentParser  # noqa: E402
from data.tokenizer import check_shard  # noqa: E402

REPO_ID = "kjj0/fineweb10B-gpt2"
NUM_TRAIN_SHARDS_ON_HUB = 103
STAGING_PREFIX = ".download-"


def shard_names(num_train_shards):
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, num_train_shards + 1)]


def hf_fetch(filename, dest_dir):
    """Download one file of the hub repo into dest_dir; return its path."""
    from huggingface_hub import hf_hub_download  # imported here so tests need no hub client
    return hf_hub_download(repo_id=REPO_ID, filename=filename, repo_type="dataset", local_dir=dest_dir)


def download(names, output_dir, fetch=hf_fetch):
    """Make output_dir hold a valid copy of each named shard; raise RuntimeError on the first failure."""
    os.makedirs(output_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(output_dir), STAGING_PREFIX + "*")):  # of a killed run
        shutil.rmtree(stale)
    for name in tqdm(names, unit="shard", desc="downloading"):
        final_path = os.path.join(output_dir, name)
        if os.path.exists(final_path):
            try:
                check_shard(final_path)
                continue
            except ValueError as error:  # kept until a good copy replaces it
                tqdm.write(f"{error}; fetching it again")
        # Staging folder inside output_dir: same filesystem, so the final move is atomic.
        staging_dir = tempfile.mkdtemp(dir=output_dir, prefix=STAGING_PREFIX)
        try:
            fetched_path = fetch(name, staging_dir)
            check_shard(fetched_path)
            os.replace(fetched_path, final_path)
        except Exception as error:
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise  # the disk, not the network: main says so
            raise RuntimeError(f"could not download {name}: {error}") from error
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)


def main(argv=None, fetch=hf_fetch):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("num_train_shards", nargs="?", type=int, default=9,
                        help=f"train shards to fetch, 0..{NUM_TRAIN_SHARDS_ON_HUB} (default 9)")
    parser.add_argument("--output_dir", default=os.path.join(here, "fineweb10B"), help="where the shards go")
    args = parser.parse_args(argv)
    if not 0 <= args.num_train_shards <= NUM_TRAIN_SHARDS_ON_HUB:
        parser.error(f"{REPO_ID} has {NUM_TRAIN_SHARDS_ON_HUB} train shards; asked for {args.num_train_shards}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir={args.output_dir} is a file; give a folder")
    if fetch is hf_fetch and importlib.util.find_spec("huggingface_hub") is None:
        parser.error("downloading needs the huggingface_hub package: pip install huggingface_hub")

    try:
        download(shard_names(args.num_train_shards), args.output_dir, fetch)
    except RuntimeError as error:
        print(f"error: {error}; check the network connection (and HF_ENDPOINT for a mirror, HF_TOKEN if you need "
              f"a token), then rerun: shards already complete in {args.output_dir} are kept", file=sys.stderr)
        return 1
    except OSError as error:  # the output folder or its disk (download() wraps the network's errors)
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: cannot write to --output_dir={args.output_dir}: {error.strerror}{where}; shards complete "
              "there are kept: free some space (or choose another --output_dir) and rerun", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"interrupted: shards complete in {args.output_dir} are kept, the one being fetched was discarded; "
              "run the same command again", file=sys.stderr)
        return 130
    print(f"{args.num_train_shards + 1} shards ready in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
