rule train:
    input:
        manifest=model_manifest,
    output:
        checkpoint=f"{RESULTS}/models/{{model}}/best.pt",
        summary=f"{RESULTS}/models/{{model}}/train.json",
        history=f"{RESULTS}/models/{{model}}/history.csv",
    params:
        scale=SCALE,
        cfg=model_params,
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.checkpoint),
    threads: S["threads"]
    priority: 2  # training is the critical path: start it as soon as its data exists
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/train_{{model}}.log",
    resources:
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        gpu=resource("train", "gpu"),
    shell:
        "GENRECON_THREADS={threads} genrecon --scale {params.scale} train --model {wildcards.model}"
        " --data {params.data} --out {params.out} > {log} 2>&1"
