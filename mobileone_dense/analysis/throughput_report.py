"""The throughput benchmark's rows (``throughput.run_throughput``) as text tables."""

from typing import Optional, Sequence

from .throughput import DTYPES


def format_throughput(rows: Sequence[dict]) -> str:
    """The two tables as text: images/s per model and setting, and ratios to the baselines."""
    lines = []
    inference = [r for r in rows if r['kind'] == 'inference']
    if inference:
        columns = sorted(
            {(r['dtype'], r['batch']) for r in inference},
            key=lambda c: (list(DTYPES).index(c[0]), c[1]),
        )
        header = f'{"inference, images/s":<36} {"variant":<7} {"form":<9} {"input":>5}' + ''.join(
            f' {f"{d} b{b}":>15}' for d, b in columns
        )
        lines += [header, '-' * len(header)]
        keys = list(
            dict.fromkeys((r['model'], r['variant'], r['form'], r['size']) for r in inference)
        )
        for key in keys:
            cells = {
                (r['dtype'], r['batch']): r
                for r in inference
                if (r['model'], r['variant'], r['form'], r['size']) == key
            }
            lines.append(
                f'{key[0]:<36} {key[1]:<7} {key[2]:<9} {key[3]:>5}'
                + ''.join(f' {_cell(cells.get(c)):>15}' for c in columns)
            )
    training = [r for r in rows if r['kind'] == 'training']
    if training:
        columns = sorted(
            {(r['batch'], r['size'], r['dtype'], r['channels_last']) for r in training},
            key=lambda c: (c[1], c[2] == 'amp', c[3]),
        )
        names = [f'b{b}@{s} {d}{" CL" if cl else ""}' for b, s, d, cl in columns]
        header = f'\n{"training, images/s":<36} {"variant":<7} {"form":<12}' + ''.join(
            f' {n:>18}' for n in names
        )
        lines += [header, '-' * len(header.strip())]
        for key in dict.fromkeys((r['model'], r['variant'], r['form']) for r in training):
            cells = {
                (r['batch'], r['size'], r['dtype'], r['channels_last']): r
                for r in training
                if (r['model'], r['variant'], r['form']) == key
            }
            lines.append(
                f'{key[0]:<36} {key[1]:<7} {key[2]:<12}'
                + ''.join(f' {_cell(cells.get(c)):>18}' for c in columns)
            )
        baseline = {
            c: r
            for c, r in (
                (
                    c,
                    next(
                        (
                            r
                            for r in training
                            if r['form'] == 'mobilenet_v2'
                            and (r['batch'], r['size'], r['dtype'], r['channels_last']) == c
                        ),
                        None,
                    ),
                )
                for c in columns
            )
        }
        lines.append('\ntraining step time relative to MobileNetV2 (same column; > 1: slower)')
        for key in dict.fromkeys(
            (r['model'], r['variant'], r['form']) for r in training if r['form'] != 'mobilenet_v2'
        ):
            cells = {
                (r['batch'], r['size'], r['dtype'], r['channels_last']): r
                for r in training
                if (r['model'], r['variant'], r['form']) == key
            }
            lines.append(
                f'{key[0]:<36} {key[1]:<7} {key[2]:<12}'
                + ''.join(f' {_ratio(baseline.get(c), cells.get(c)):>18}' for c in columns)
            )
    return '\n'.join(lines)


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return '-'
    if row['images_per_s'] is None:
        return 'skipped' if (row['error'] or '').startswith('skipped') else 'error'
    return f'{row["images_per_s"]:.0f}'


def _ratio(baseline: Optional[dict], row: Optional[dict]) -> str:
    if not baseline or not row or not baseline['images_per_s'] or not row['images_per_s']:
        return '-'
    return f'{baseline["images_per_s"] / row["images_per_s"]:.2f}x'
