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
        RECORD_FILES
        + "GENRECON_THREADS={threads} genrecon bench --quick --out {output} > {log} 2>&1"


rule numbers:
    input:
        results=lambda w: required_inputs(TABLES, SETTINGS, RESULTS),
        tables=TABLES_FILE,
        paper=PAPER_FILE,
    output:
        f"{REPORT}/numbers.csv",
    params:
        scale=SCALE,
        results=RESULTS,
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/numbers.log",
    shell:
        RECORD_FILES
        + "genrecon --scale {params.scale} report numbers --results {params.results}"
        " --tables {input.tables} --paper {input.paper} --benchmarks results/benchmarks.json"
        " --out {output} > {log} 2>&1"


rule notebook:
    input:
        notebook="notebooks/{notebook}.ipynb",
        numbers=f"{REPORT}/numbers.csv",
        tables=TABLES_FILE,
        results=lambda w: page_inputs(TABLES, SETTINGS, RESULTS, w.notebook),
    output:
        executed=f"{REPORT}/{{notebook}}.ipynb",
        html=f"{REPORT}/{{notebook}}.html",
    wildcard_constraints:
        notebook="|".join(NOTEBOOKS),
    params:
        scale=SCALE,
        results=RESULTS,
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/notebook_{{notebook}}.log",
    shell:
        RECORD_FILES
        + "genrecon --scale {params.scale} report notebook --notebook {input.notebook}"
        " --out {output.executed} --html {output.html} -p numbers={input.numbers}"
        " -p results={params.results} -p scale={params.scale} > {log} 2>&1"


rule index:
    input:
        pages=expand(f"{REPORT}/{{notebook}}.html", notebook=NOTEBOOKS),
        numbers=f"{REPORT}/numbers.csv",
        tables=TABLES_FILE,
    output:
        f"{REPORT}/index.html",
    params:
        scale=SCALE,
    conda:
        "../../envs/genrecon.yaml"
    log:
        f"{LOGS}/index.log",
    shell:
        RECORD_FILES
        + "genrecon --scale {params.scale} report index --pages {input.pages} --out {output}"
        " > {log} 2>&1"
