"""Explain a whole image collection on a SLURM cluster, with dask-jobqueue.

    pip install 'lrptool[dask]' dask-jobqueue
    python examples/slurm_cluster.py MODEL.onnx /shared/images /shared/heatmaps --jobs 16 --partition cpu

Each SLURM job starts Dask worker processes on one node; they load the model once each and explain
chunks of image paths until the list is done. The image folder and the output folder must be on a
filesystem every node mounts at the same path. Rerun the same command with ``--resume`` after an
interruption: it redoes only what the output folder's manifest does not prove finished.

``--print-job-script`` shows the batch script SLURM would get, without submitting anything. From the
command line instead: ``cluster = slurm_cluster(...); cluster.scale(jobs=16)`` in a Python session,
then ``lrptool explain MODEL IMAGES -o OUT --scheduler`` with ``cluster.scheduler_address``.
"""

import argparse
import sys


def slurm_cluster(partition=None, account=None, cores=8, processes=4, memory="16GB", walltime="04:00:00",
                  environment=None, log_directory="slurm-logs"):
    """A ``dask_jobqueue.SLURMCluster`` whose jobs run ``processes`` workers on ``cores`` cores each.
    Nothing is submitted until ``scale`` is called."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=partition, account=account, cores=cores, processes=processes, memory=memory, walltime=walltime,
        # every worker runs with the Python (and so the lrptool) that runs this script, unless told otherwise
        python=sys.executable, job_script_prologue=list(environment or []), log_directory=log_directory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("outdir")
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs (nodes) to start")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4, help="worker processes per job")
    parser.add_argument("--memory", default="16GB")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--print-job-script", action="store_true", help="print the job script and stop")
    options = parser.parse_args(argv)

    cluster = slurm_cluster(options.partition, options.account, options.cores, options.processes, options.memory,
                            options.walltime)
    if options.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return
    from distributed import Client

    import lrptool

    cluster.scale(jobs=options.jobs)
    with Client(cluster) as client:
        client.wait_for_workers(1)
        result = lrptool.explain_folder(options.model, options.images, options.outdir, formats=("png", "npy"),
                                        jsonl=f"{options.outdir}/explanations.jsonl", resume=options.resume,
                                        client=client, progress=True)
    cluster.close()
    for line in result.throughput:
        print(line)
    print(f"explained {result.explained} image(s), {len(result.failures)} failed, {result.resumed} already done")


if __name__ == "__main__":
    main()
