rule tracking_store:
    output:
        touch("results/.tracking_ready"),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/tracking_store.log",
    shell:
        "genrecon init-tracking > {log} 2>&1"


rule download_lodopab:
    output:
        "data/lodopab/paper/zenodo_record.json",
    params:
        scale=SCALE,
        root=lambda w, output: os.path.dirname(output[0]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/download_lodopab.log",
    resources:
        mem_mb=resource("download", "mem_mb"),
        runtime=resource("download", "runtime"),
    shell:
        "genrecon --scale {params.scale} download lodopab --root {params.root} > {log} 2>&1"


rule download_mnist:
    output:
        expand("data/mnist/raw/{name}", name=MNIST_FILES),
    params:
        scale=SCALE,
        root=lambda w, output: os.path.dirname(output[0]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/download_mnist.log",
    resources:
        mem_mb=resource("download", "mem_mb"),
        runtime=resource("download", "runtime"),
    shell:
        "genrecon --scale {params.scale} download mnist --root {params.root} > {log} 2>&1"


rule prepare_lodopab:
    priority: 3
    input:
        tracking=ancient("results/.tracking_ready"),
        download=(["data/lodopab/paper/zenodo_record.json"] if S["datasets"]["lodopab"]["source"] == "zenodo" else []),
    output:
        manifest=manifest("lodopab"),
        fbp=f"{data_root('lodopab')}/fbp.hdf5",
    params:
        scale=SCALE,
        root=lambda w, output: os.path.dirname(output.manifest),
        cfg=S["datasets"]["lodopab"],
        seed=config["seed"],
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/prepare_lodopab.log",
    resources:
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
        gpu=resource("prepare", "gpu"),
    shell:
        "genrecon --scale {params.scale} prepare lodopab --root {params.root} > {log} 2>&1"


rule prepare_mnist:
    input:
        tracking=ancient("results/.tracking_ready"),
        raw=(
            expand("data/mnist/raw/{name}", name=MNIST_FILES)
            if S["datasets"]["mnist"]["source"] == "download"
            else expand("vendor/mnist/{name}", name=MNIST_FILES[2:])
        ),
    output:
        manifest=manifest("mnist"),
        cs=f"{data_root('mnist')}/cs.hdf5",
    params:
        scale=SCALE,
        root=lambda w, output: os.path.dirname(output.manifest),
        cfg=S["datasets"]["mnist"],
        seed=config["seed"],
        raw=lambda w, input: os.path.dirname(input.raw[0]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/prepare_mnist.log",
    resources:
        mem_mb=resource("default", "mem_mb"),
        runtime=resource("default", "runtime"),
    shell:
        "genrecon --scale {params.scale} prepare mnist --root {params.root} --raw {params.raw} > {log} 2>&1"
