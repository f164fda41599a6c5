rule evaluate:
    input:
        checkpoint=rules.train.output.checkpoint,
        manifest=model_manifest,
    output:
        summary=f"{RESULTS}/eval/{{model}}/summary.json",
        per_image=f"{RESULTS}/eval/{{model}}/per_image.csv",
        examples=f"{RESULTS}/eval/{{model}}/examples.npz",
        samples_sweep=f"{RESULTS}/eval/{{model}}/samples_sweep.csv",
    params:
        scale=SCALE,
        cfg=lambda w: S["evaluate"][model_dataset(w)],
        counts=S["sweeps"]["num_samples"],
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.summary),
    threads: S["threads"]
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/evaluate_{{model}}.log",
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
        gpu=resource("evaluate", "gpu"),
    shell:
        "GENRECON_THREADS={threads} genrecon --scale {params.scale} evaluate --model {wildcards.model}"
        " --checkpoint {input.checkpoint} --data {params.data} --out {params.out} > {log} 2>&1"


rule baseline:
    input:
        manifest=lambda w: ancient(manifest(w.dataset)),
    output:
        summary=f"{RESULTS}/eval/baseline_{{dataset}}/summary.json",
    params:
        scale=SCALE,
        cfg=lambda w: S["evaluate"][w.dataset],
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.summary),
    wildcard_constraints:
        dataset="lodopab|mnist",
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/baseline_{{dataset}}.log",
    resources:
        mem_mb=resource("default", "mem_mb"),
        runtime=resource("default", "runtime"),
    shell:
        "genrecon --scale {params.scale} baseline {wildcards.dataset} --data {params.data} --out {params.out} > {log} 2>&1"
