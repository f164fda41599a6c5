rule tracking_store:
    output:
        touch("results/.tracking_ready"),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/tracking_store.log",
    shell:
        "genrecon init-tracking > {log} 2>&1"


rule download:
    output:
        f"data/{{dataset}}/{SCALE}/download.json",
    params:
        scale=SCALE,
        settings=lambda w: as_params(genrecon_config.prepare_settings(SETTINGS, w.dataset)),
        root=lambda w, output: os.path.dirname(output[0]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/download_{{dataset}}.log",
    resources:
        mem_mb=resource("download", "mem_mb"),
        runtime=resource("download", "runtime"),
    shell:
        RECORD_FILES
        + "genrecon --scale {params.scale} download {wildcards.dataset} --root {params.root}"
        " > {log} 2>&1"


rule prepare:
    priority: 3
    input:
        tracking=ancient("results/.tracking_ready"),
        raw=prepare_inputs,
    output:
        manifest=f"data/{{dataset}}/{SCALE}/MANIFEST.json",
    params:
        scale=SCALE,
        settings=lambda w: as_params(genrecon_config.prepare_settings(SETTINGS, w.dataset)),
        root=lambda w, output: os.path.dirname(output.manifest),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/prepare_{{dataset}}.log",
    resources:
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
        gpu=resource("prepare", "gpu"),
    shell:
        RECORD_FILES
        + "genrecon --scale {params.scale} prepare {wildcards.dataset} --root {params.root}"
        " > {log} 2>&1"
