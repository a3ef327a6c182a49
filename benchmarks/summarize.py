"""Print a markdown table from a pytest-benchmark JSON file: python benchmarks/summarize.py out.json"""
import json
import sys


def main(path):
    data = json.load(open(path))
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, date: {data['datetime'][:10]}")
    print("| benchmark | min | extra |\n| --- | --- | --- |")
    for b in data["benchmarks"]:
        extra = ", ".join(f"{k}={v}" for k, v in b["extra_info"].items() if k not in ("torch", "machine"))
        print(f"| {b['name']} | {b['stats']['min'] * 1e3:.3f} ms | {extra} |")


if __name__ == "__main__":
    main(sys.argv[1])
