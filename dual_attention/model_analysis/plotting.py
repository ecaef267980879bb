"""Matplotlib heat maps of attention maps, relations and symbol retrieval, labelled with tokens or patches.

Every map is drawn with the receiver i (query) on the rows and the sender j (key) on the columns, so entry [i, j] of
a relation map is r(x_i, x_j) and of an attention map α_ij. In causal layers the entries j > i (never used by the
model) are greyed out. Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state), which makes them
safe to create from the threads of a web app.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from dual_attention.model_analysis.analysis import ForwardAnalysis, LayerAnalysis
from dual_attention.model_analysis.postprocess import future_mask, postprocess_relations, scale_by_attention

__all__ = [
    "heatmap_grid",
    "symbol_retrieval_figure",
    "layer_figure",
    "write_viz_pngs",
    "VIEWS",
    "patch_labels",
]

#: the views :func:`layer_figure` draws
VIEWS = ("sa", "ra", "relations", "relations_x_attn", "symbols", "cross")
MAX_PANELS = 16


def _mpl_text(label: str) -> str:
    """Escape what matplotlib's mathtext would interpret (``$``)."""
    return label.replace("$", r"\$")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _tick_step(n: int, limit: int = 64) -> int:
    return max(1, math.ceil(n / limit))


def heatmap_grid(
    maps,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    titles: Sequence[str],
    *,
    suptitle: str | None = None,
    hide: np.ndarray | Tensor | None = None,
    signed: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "sender j (key)",
    ylabel: str = "receiver i (query)",
    max_panels: int = MAX_PANELS,
    markers: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
):
    """A grid of heat maps, one per ``maps[k]`` ``(K, n, m)``, rows labelled ``row_labels`` (n), columns (m).

    Args:
        hide: bool ``(n, m)``; True entries are drawn grey (e.g. the future of a causal layer).
        signed: diverging colour map centred on 0 (relations); otherwise sequential from ``vmin`` (default 0).
        max_panels: draw at most this many maps (the title says how many were left out).
        markers: per map, ``(rows, cols)`` of cells to mark with a white dot (e.g. the argmax of each row).
    """
    from matplotlib.figure import Figure

    data = _maps_array(maps, row_labels, col_labels, titles)
    k, n, m = data.shape
    shown = min(k, max_panels)
    ncols = min(shown, 4)
    nrows = math.ceil(shown / ncols)
    panel = min(max(0.22 * max(n, m) + 1.6, 3.2), 9.0, 28.0 / ncols)  # inches; at most ~28 in wide
    fig = Figure(figsize=(panel * ncols + 0.8, panel * nrows + (0.8 if suptitle else 0.3)), layout="constrained")
    fontsize = min(max(11 - max(n, m) / 8, 5), 10)
    hide_np = None if hide is None else _as_numpy(hide).astype(bool)
    for p in range(shown):
        ax = fig.add_subplot(nrows, ncols, p + 1)
        values = data[p].astype(np.float32).copy()
        if hide_np is not None:
            values[hide_np] = np.nan
        image = _draw_map(ax, values, signed, vmin, vmax)
        rs, cs = _tick_step(n), _tick_step(m)
        ax.set_yticks(range(0, n, rs), [_mpl_text(row_labels[i]) for i in range(0, n, rs)], fontsize=fontsize)
        ax.set_xticks(range(0, m, cs), [_mpl_text(col_labels[j]) for j in range(0, m, cs)], fontsize=fontsize,
                      rotation=90)
        if markers is not None:
            rows, cols = markers[p]
            ax.scatter(list(cols), list(rows), s=12, c="white", edgecolors="black", linewidths=0.5)
        ax.set_title(_mpl_text(titles[p]), fontsize=10)
        if p % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        if p >= shown - ncols:
            ax.set_xlabel(xlabel, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if suptitle or shown < k:
        note = f" (first {shown} of {k} shown)" if shown < k else ""
        fig.suptitle(_mpl_text((suptitle or "") + note), fontsize=12)
    return fig


def _maps_array(maps, row_labels: Sequence[str], col_labels: Sequence[str], titles: Sequence[str]) -> np.ndarray:
    """``maps`` as a ``(K, n, m)`` array, checked against the labels and titles (ValueError)."""
    data = _as_numpy(maps)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"maps must have shape (K, n, m) or (n, m), got {data.shape}")
    k, n, m = data.shape
    if len(row_labels) != n or len(col_labels) != m or len(titles) != k:
        raise ValueError(f"labels do not fit maps of shape {data.shape}: {len(row_labels)} row labels, "
                         f"{len(col_labels)} column labels, {len(titles)} titles")
    return data


def _draw_map(ax, values: np.ndarray, signed: bool, vmin: float | None, vmax: float | None):
    """Draw one ``(n, m)`` map (NaN = hidden, grey): diverging around 0 when ``signed``, else sequential."""
    import matplotlib

    finite = values[np.isfinite(values)]
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        lo, hi, cmap = -(bound or 1.0), bound or 1.0, "RdBu_r"
    else:
        lo = 0.0 if vmin is None else vmin
        hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
        hi = hi if hi > lo else lo + 1.0
        cmap = "viridis"
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    return ax.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=lo, vmax=hi, aspect="auto",
                     interpolation="nearest")


def symbol_retrieval_figure(symbol_attn, labels: Sequence[str], *, heads: Sequence[int] | None = None,
                            suptitle: str | None = None, max_symbols: int = 40):
    """Attention of each token over the symbol library, ``symbol_attn (H_sym, n, N)``, one panel per head.

    Only the symbols that some token takes (argmax) are drawn as columns (``max_symbols`` at most), labelled
    ``s<k>`` with k the index in the library.
    """
    data = _as_numpy(symbol_attn)  # (H, n, N)
    heads = list(range(data.shape[0])) if heads is None else list(heads)
    data = data[heads]
    best = np.argmax(data, axis=-1)  # (H', n)
    used = sorted(set(best.reshape(-1).tolist()))[:max_symbols]
    cols = data[:, :, used]  # (H', n, used)
    column = {k: c for c, k in enumerate(used)}
    markers = [([i for i in range(best.shape[1]) if best[p, i] in column],
                [column[best[p, i]] for i in range(best.shape[1]) if best[p, i] in column]) for p in range(len(heads))]
    return heatmap_grid(cols, labels, [f"s{k}" for k in used], [f"symbol attention, head {h}" for h in heads],
                        suptitle=(suptitle or "") + " (dot = the symbol each token took)", vmin=0.0,
                        xlabel="symbol (library index)", ylabel="token", markers=markers)


def _select(values: Sequence[int] | None, n: int, what: str) -> list[int]:
    if values is None:
        return list(range(n))
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise ValueError(f"{what}={bad} out of range; this layer has {n} ({', '.join(map(str, range(n)))})")
    return list(values)


def layer_figure(
    layer: LayerAnalysis,
    view: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    *,
    heads: Sequence[int] | None = None,
    relations: Sequence[int] | None = None,
    postprocess: str = "None",
    scale: float = 1.0,
    ra_head: int = 0,
    batch: int = 0,
    model_name: str = "",
):
    """One figure of ``layer`` for ``view`` (see :data:`VIEWS`), or None when the layer has nothing to show.

    * ``'sa'`` / ``'ra'``: the self- / relational-attention maps of ``heads`` (default all);
    * ``'relations'``: post-processed relations ``post(scale · r_r(x_i, x_j))`` for ``relations`` (default all);
    * ``'relations_x_attn'``: the same multiplied entrywise by RA head ``ra_head``'s attention α_ij;
    * ``'symbols'``: the symbol-library attention per symbolic-attention head;
    * ``'cross'``: decoder cross-attention (columns = ``col_labels``, the source tokens).
    """
    if view not in VIEWS:
        raise ValueError(f"view={view!r} is not valid; allowed: {', '.join(VIEWS)}")
    col_labels = row_labels if col_labels is None else col_labels
    n = len(row_labels)
    hide = future_mask(n, n).numpy() if layer.causal else None
    where = f"{model_name} · {layer.name}".strip(" ·")
    if view in ("sa", "ra", "cross"):
        return _attention_figure(layer, view, row_labels, col_labels, heads, batch, hide, where)
    if view == "symbols":
        if layer.symbol_attn is None:
            return None
        return symbol_retrieval_figure(layer.symbol_attn[batch], row_labels, heads=None,
                                       suptitle=f"{where}: symbol retrieval")
    return _relations_figure(layer, view == "relations_x_attn", row_labels, relations, postprocess, scale, ra_head,
                             batch, hide, where)


def _attention_figure(layer: LayerAnalysis, view: str, row_labels, col_labels, heads, batch: int, hide, where: str):
    """The SA, RA or cross-attention maps of ``heads`` (None if the layer has no such attention)."""
    attn = {"sa": layer.sa_attn, "ra": layer.ra_attn, "cross": layer.cross_attn}[view]
    if attn is None:
        return None
    attn = attn[batch]  # (H, n, m)
    idx = _select(heads, attn.shape[0], "heads")
    name = {"sa": "SA", "ra": "RA", "cross": "cross-attention"}[view]
    return heatmap_grid(attn[idx], row_labels, col_labels if view == "cross" else row_labels,
                        [f"{name} head {h}" for h in idx], hide=None if view == "cross" else hide,
                        suptitle=f"{where}: {name} attention", vmin=0.0,
                        xlabel="source token j" if view == "cross" else "sender j (key)")


def _relations_figure(layer: LayerAnalysis, times_attn: bool, labels, relations, postprocess: str, scale: float,
                      ra_head: int, batch: int, hide, where: str):
    """Post-processed relations (times RA head ``ra_head``'s attention when ``times_attn``), or None."""
    maps = layer.relation_maps
    if maps is None:
        return None
    maps = maps[batch]  # (R, n, n)
    idx = _select(relations, maps.shape[0], "relations")
    processed = postprocess_relations(maps[idx], postprocess, scale, causal=layer.causal)
    title = f"{where}: relations r(x_i, x_j)"
    if postprocess != "None" or scale != 1.0:
        title += f", {postprocess} (scale {scale:g})"
    if times_attn:
        if layer.ra_attn is None:
            return None
        h = _select([ra_head], layer.ra_attn.shape[1], "ra_head")[0]
        processed = scale_by_attention(processed, layer.ra_attn[batch, h])
        title += f" × RA head {h} attention"
    signed = postprocess == "None" and bool((processed < 0).any())
    return heatmap_grid(processed, labels, labels, [f"relation {r}" for r in idx], hide=hide, signed=signed,
                        suptitle=title)


def patch_labels(num_patches_h: int, num_patches_w: int, cls: bool = True) -> list[str]:
    """``['cls', '0,0', '0,1', ...]``: patch (row, column), row-major, as the vision models order them."""
    labels = [f"{r},{c}" for r in range(num_patches_h) for c in range(num_patches_w)]
    return (["cls"] if cls else []) + labels


def write_viz_pngs(
    analysis: ForwardAnalysis,
    labels: dict[str, Sequence[str]],
    out_dir: str | Path,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    relations: Sequence[int] | None = None,
    postprocess: str = "None",
    scale: float = 1.0,
    dpi: int = 110,
    model_name: str = "",
    views: Sequence[str] | None = None,
) -> list[Path]:
    """Write one PNG per layer and view into ``out_dir``; returns the paths.

    Names: ``layer{ℓ}_{view}.png`` (LM, vision) or ``{encoder|decoder}_layer{ℓ}_{view}.png`` (seq2seq), with view in
    ``sa``, ``ra``, ``relations``, ``symbols``, ``cross`` (``views`` selects some; default all). ``labels`` maps each
    stack (``'blocks'``, ``'encoder'``, ``'decoder'``) to its token labels.
    """
    file_views = ("sa", "ra", "relations", "symbols", "cross")
    views = file_views if views is None else tuple(views)
    bad = [v for v in views if v not in file_views]
    if bad:
        raise ValueError(f"views={bad} not valid; allowed: {', '.join(file_views)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stacks = list(dict.fromkeys(layer.stack for layer in analysis.layers))
    for stack in stacks:
        stack_layers = analysis.stack(stack)
        chosen = _select(layers, len(stack_layers), "layers")
        for i in chosen:
            layer = stack_layers[i]
            prefix = f"layer{i}" if stack == "blocks" else f"{stack}_layer{i}"
            for view in views:
                view_heads = _fit(heads, layer, view) if view in ("sa", "ra", "cross") else None
                view_relations = _fit(relations, layer, "relations")
                if view_heads == [] or (view == "relations" and view_relations == []):
                    continue  # none of the requested heads/relations exist in this view
                fig = layer_figure(layer, view, labels[stack], labels.get("encoder"), heads=view_heads,
                                   relations=view_relations, postprocess=postprocess, scale=scale,
                                   model_name=model_name)
                if fig is None:
                    continue
                path = out / f"{prefix}_{view}.png"
                fig.savefig(path, dpi=dpi)
                written.append(path)
    return written


def _fit(indices: Sequence[int] | None, layer: LayerAnalysis, view: str) -> list[int] | None:
    """The requested head/relation indices that exist in this view (SA and RA may have different counts).

    None means all; an empty list means none of the requested ones exists here.
    """
    if indices is None:
        return None
    source = {"sa": layer.sa_attn, "ra": layer.ra_attn, "cross": layer.cross_attn,
              "relations": layer.relation_maps}.get(view)
    if source is None:
        return None
    return [i for i in indices if 0 <= i < source.shape[1]]
