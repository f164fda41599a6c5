NOTEBOOKS = ["lodopab", "mnist", "provenance"]


rule benchmarks:
    input:
        tracking=ancient("results/.tracking_ready"),
    output:
        "results/benchmarks.json",
    threads: workflow.cores
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/benchmarks.log",
    resources:
        mem_mb=resource("default", "mem_mb"),
        runtime=resource("default", "runtime"),
    shell:
        "GENRECON_THREADS={threads} genrecon bench --quick --out {output} > {log} 2>&1"


rule numbers:
    input:
        evals=expand(f"{RESULTS}/eval/{{model}}/summary.json", model=MODELS),
        trains=expand(f"{RESULTS}/models/{{model}}/train.json", model=MODELS),
        baselines=expand(f"{RESULTS}/eval/baseline_{{dataset}}/summary.json", dataset=DATASETS),
        samples=expand(f"{RESULTS}/eval/{{model}}/samples_sweep.csv", model=MODELS),
        refine=expand(f"{RESULTS}/sweeps/refine_{{model}}.csv", model=LODOPAB_MODELS),
        bench="results/benchmarks.json",
        paper="reference/paper_results.yaml",
    output:
        f"{REPORT}/numbers.csv",
    params:
        scale=SCALE,
        results=lambda w, input: str(Path(input.trains[0]).parents[2]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/numbers.log",
    shell:
        "genrecon --scale {params.scale} report numbers --results {params.results} --paper {input.paper}"
        " --benchmarks {input.bench} --out {output} > {log} 2>&1"


rule notebook:
    input:
        notebook="notebooks/{notebook}.ipynb",
        numbers=f"{REPORT}/numbers.csv",
        examples=expand(f"{RESULTS}/eval/{{model}}/examples.npz", model=MODELS),
        histories=expand(f"{RESULTS}/models/{{model}}/history.csv", model=MODELS),
    output:
        executed=f"{REPORT}/{{notebook}}.ipynb",
        html=f"{REPORT}/{{notebook}}.html",
    wildcard_constraints:
        notebook="|".join(NOTEBOOKS),
    params:
        scale=SCALE,
        results=lambda w, input: str(Path(input.examples[0]).parents[2]),
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/notebook_{{notebook}}.log",
    shell:
        "genrecon --scale {params.scale} report notebook --notebook {input.notebook} --out {output.executed}"
        " --html {output.html} -p numbers={input.numbers} -p results={params.results}"
        " -p scale={params.scale} > {log} 2>&1"


rule index:
    input:
        pages=expand(f"{REPORT}/{{notebook}}.html", notebook=NOTEBOOKS),
    output:
        f"{REPORT}/index.html",
    params:
        scale=SCALE,
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/index.log",
    shell:
        "genrecon --scale {params.scale} report index --pages {input.pages} --out {output} > {log} 2>&1"
