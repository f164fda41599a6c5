rule sweep_refinement:
    input:
        checkpoint=rules.train.output.checkpoint,
        manifest=model_manifest,
    output:
        f"{RESULTS}/sweeps/refine_{{model}}.csv",
    params:
        scale=SCALE,
        cfg=S["sweeps"]["refinement"],
        data=lambda w, input: os.path.dirname(input.manifest),
    threads: S["threads"]
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/sweep_refinement_{{model}}.log",
    resources:
        mem_mb=resource("sweep", "mem_mb"),
        runtime=resource("sweep", "runtime"),
        gpu=resource("sweep", "gpu"),
    shell:
        "GENRECON_THREADS={threads} genrecon --scale {params.scale} sweep refine --model {wildcards.model}"
        " --checkpoint {input.checkpoint} --data {params.data} --out {output} > {log} 2>&1"
