#!/bin/bash
# P2O training as a Slurm heterogeneous job.
#
#   component 0  GPU nodes: the trainer (Megatron-Core policy + colocated vLLM), `srun` + torchrun per node
#   component 1  a CPU node: the GEPA prompt-evolution service (`p2o gepa-serve`)
#   component 2  optional, a GPU node: the Self-Ref reflection model (frozen initial policy; REFLECTION_GPUS > 0)
#
# Self-Ref topology: with REFLECTION_GPUS > 0 the frozen model runs on its own GPU node (component 2, the
# trainer gets reflection.server=external). Without it (the default) the trainer starts it as a server process
# of its own on rank 0's GPU (reflection.server=auto -> subprocess with a vLLM policy on CUDA), holding
# reflection.gpu_memory_utilization of that GPU; the config load refuses a sum with
# rollout.vllm_gpu_memory_utilization >= 1. See docs/gpu.md ("Self-Ref reflection model").
#
# Submit (either way):
#   CONFIG=configs/qwen3_4b_p2o_deepscaler.yaml sbatch slurm/p2o_qwen3.sh          # sizes from #SBATCH below
#   CONFIG=... NODES=4 GPUS_PER_NODE=8 REFLECTION_GPUS=1 bash slurm/p2o_qwen3.sh  # sizes from the environment
#   CONFIG=configs/slurm_test_cpu.yaml GPUS_PER_NODE=0 GEPA_CPUS=1 bash slurm/p2o_qwen3.sh --wait   # CPU run
#
# Settings (environment; every other knob comes from the YAML):
#   CONFIG           run config YAML (required)
#   OVERRIDES        extra config overrides "key=value key=value" (applied after CONFIG)
#   RUN_DIR          run directory; logs of this job go to $RUN_DIR/slurm/<job id>/   [config logging.run_dir]
#   CONTAINER        optional image: *.sif runs under apptainer, anything else under pyxis (srun --container-image)
#   PYTHON           Python with P2O installed on the nodes (or in the container)       [python3]
#   NODES            trainer nodes                                                         [1]
#   GPUS_PER_NODE    GPUs (trainer ranks) per node; 0 = CPU run: gloo, no GPU binding     [8]
#   CPU_PROCS_PER_NODE  ranks per node when GPUS_PER_NODE=0                                 [1]
#   GEPA_CPUS, PARTITION, GEPA_PARTITION, REFLECTION_GPUS, REFLECTION_PARTITION, TIME, ACCOUNT, SIGNAL_LEAD_S:
#                    see lib/submit.sh
#   P2O_CACHE_ROOT   node-local directory for the Triton/Inductor/vLLM caches: see lib/common.sh
#   LAUNCHER, MASTER_PORT, NCCL_*: see lib/launch.sh
#   ENDPOINT_TIMEOUT_S, MAX_REQUEUES, REFLECTION_SERVER, REFLECTION_MODEL, REFLECTION_PORT: see lib/job.sh
#   STOP_TIMEOUT_S   seconds a component gets to stop after SIGTERM (the trainer checkpoints)  [120]
#
# Pre-emption and time limits: Slurm sends SIGUSR1 to this script 900 s before the limit (SIGNAL_LEAD_S in
# submit mode); it is forwarded to the trainer, which checkpoints at its next phase boundary (after the
# generation phase or the PPO minibatch in progress) and exits 75; the job then requeues itself and the next
# attempt resumes (checkpoint.resume=auto). A SIGTERM after the SIGUSR1 (the limit came first) also requeues. A component that fails stops the others and the job exits non-zero;
# $RUN_DIR/slurm/<job id>/summary.json says which one and why. See docs/slurm.md.
#
#SBATCH --job-name=p2o-qwen3
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@900
#SBATCH --nodes=1 --ntasks-per-node=1 --gpus-per-node=8 --exclusive --mem=0
#SBATCH hetjob
#SBATCH --nodes=1 --ntasks=1 --cpus-per-task=8
set -uo pipefail

SCRIPT_NAME=slurm/p2o_qwen3.sh

# The batch copy of this script runs from Slurm's spool directory: find slurm/lib through the job's
# Command (the submitted path), this file's own directory, or the submit directory.
find_slurm_dir() {
    local cand cmd=""
    [[ -n ${SLURM_JOB_ID:-} ]] && cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
    for cand in "${P2O_SLURM_DIR:-}" "${cmd:+$(dirname "$cmd")}" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do
        [[ -n $cand && -f $cand/lib/common.sh ]] && { (cd "$cand" && pwd); return 0; }
    done
    echo "p2o-slurm: cannot find slurm/lib (set P2O_SLURM_DIR=/path/to/p2o/slurm)" >&2
    return 1
}
P2O_SLURM_DIR=$(find_slurm_dir) || exit 1
source "$P2O_SLURM_DIR/lib/common.sh"

if [[ -z ${SLURM_JOB_ID:-} ]]; then
    source "$P2O_SLURM_DIR/lib/submit.sh"
    submit_job "$P2O_SLURM_DIR/p2o_qwen3.sh" 2 "$@"
fi

source "$P2O_SLURM_DIR/lib/endpoints.sh"
source "$P2O_SLURM_DIR/lib/launch.sh"
source "$P2O_SLURM_DIR/lib/supervise.sh"
source "$P2O_SLURM_DIR/lib/job.sh"
run_training_job
