"""Gradio app: what the heads of a DAT language model attend to and which relations they compute, as heat maps.

    python -m dual_attention.model_analysis.lm_visualization_app --model CHECKPOINT [--host 127.0.0.1]
                                                                  [--port 7861] [--share] [--device cuda]

Load a checkpoint, type a prompt and click "Run forward pass" (one :func:`analyze_lm` pass, whose logits equal the
model's); then pick a layer, heads and what to show:

* **Self-attention** / **Relational attention**: α^h_ij, row i = receiver (query) token, column j = sender (key);
* **Relations**: entry [i, j] = post(c · r_ℓ(x_i, x_j)) for relation ℓ, with the post-processors ``None``,
  ``Clip``, ``Sign``, ``Sigmoid-Normalize``, ``Softmax-Normalize`` (over the senders j ≤ i) and scale factor c;
* **Relations × RA attention**: the same multiplied entrywise by one RA head's α^h_ij (what that head routes);
* **Symbol retrieval**: each token's attention over the symbol library (symbolic attention); the token table lists
  the symbol each token took (argmax) per head.

The future j > i of these causal models is greyed out. With bertviz installed, the same maps open in its interactive
head and model views. Fixed with respect to the published app: relations shown as r(x_i, x_j) (it transposed them,
and its "scaled" view and causal softmax used mismatched triangles), any block type (post-norm, SA-only, RA-only,
RCA/DisRCA) and symbol retriever, no network I/O or ``./static`` directory at import, no public link unless
``--share``, and errors shown in the page.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from dual_attention.model_analysis.app_common import AppBase, AppError, message, serve
from dual_attention.model_analysis.postprocess import RELATION_POSTPROCESSORS

__all__ = ["build_app", "model_dims", "run_analysis", "render_view", "token_table", "bertviz_html", "VIEWS", "main"]

TITLE = "Dual Attention Transformer: attention and relation visualizer"

#: page label → plotting view
VIEWS = {
    "Self-attention": "sa",
    "Relational attention": "ra",
    "Relations": "relations",
    "Relations × RA attention": "relations_x_attn",
    "Symbol retrieval": "symbols",
}
ALL = "all"


def model_dims(model) -> dict[str, Any]:
    """Layers, SA/RA heads, relations, symbolic-attention heads and available views of a language model."""
    blocks = list(model.layers.blocks)
    sa = ra = n_rel = 0
    for block in blocks:
        da = getattr(block, "dual_attn", None)
        if da is None:  # Transformer baseline
            sa = max(sa, block.self_attn.n_heads)
            continue
        sa, ra = max(sa, da.n_heads_sa), max(ra, da.n_heads_ra)
        if da.use_rel_attn and da.ra_type not in ("rca", "hadamard"):  # these have no separate relations
            mod = da.relational_attention
            n_rel = max(n_rel, getattr(mod, "n_relations", mod.n_heads))
    retrievers = model.layers["symbol_retrievers"] if "symbol_retrievers" in model.layers else []
    symbolic = any(hasattr(r, "forward_with_weights") or hasattr(r, "symbolic_attention") for r in retrievers)
    views = [label for label, key in VIEWS.items()
             if (key == "sa" and sa) or (key == "ra" and ra) or (key in ("relations", "relations_x_attn") and n_rel)
             or (key == "symbols" and symbolic)]
    return dict(n_layers=len(blocks), sa=sa, ra=ra, relations=n_rel, symbolic=symbolic, views=views)


def run_analysis(loaded, prompt: str, device: str = "cpu", max_tokens: int = 256) -> dict[str, Any]:
    """Tokenise ``prompt`` and run :func:`analyze_lm`; ``{'analysis', 'labels', 'ids'}`` (AppError if invalid)."""
    from dual_attention.model_analysis.analysis import analyze_lm
    from dual_attention.model_analysis.text import token_labels

    model, tok = loaded.model, loaded.tokenizer
    if not prompt:
        raise AppError("enter a prompt")
    ids = tok.encode(prompt)
    if not ids:
        raise AppError("the prompt encodes to no tokens")
    limit = min(int(model.block_size), max_tokens)
    if len(ids) > limit:
        why = "the model's context" if limit == int(model.block_size) else "the heat maps' limit"
        raise AppError(f"the prompt has {len(ids)} tokens but {why} is {limit} tokens: shorten the prompt")
    if max(ids) >= int(model.vocab_size):
        raise AppError(f"the prompt has token ids >= the model's vocabulary ({model.vocab_size}): wrong tokenizer?")
    analysis = analyze_lm(model, torch.tensor([ids], dtype=torch.long, device=device))
    return dict(analysis=analysis, labels=token_labels(tok, ids), ids=ids)


def _index(choice, what: str) -> int | None:
    if choice in (None, "", ALL):
        return None
    try:
        return int(choice)
    except (TypeError, ValueError):
        raise AppError(f"{what} {choice!r} is not valid") from None


def render_view(result: dict[str, Any] | None, view_label: str, layer, head, relation, ra_head,
                postprocess: str = "None", scale: float = 1.0, model_name: str = ""):
    """The figure for the chosen view, or AppError explaining why there is none."""
    from dual_attention.model_analysis.plotting import layer_figure

    if result is None:
        raise AppError("run a forward pass first")
    if view_label not in VIEWS:
        raise AppError(f"choose what to show ({', '.join(VIEWS)})")
    view = VIEWS[view_label]
    layers = result["analysis"].layers
    li = _index(layer, "layer") or 0
    if not 0 <= li < len(layers):
        raise AppError(f"layer {li} does not exist (the model has {len(layers)})")
    rec = layers[li]
    heads = None if _index(head, "head") is None else [_index(head, "head")]
    relations = None if _index(relation, "relation") is None else [_index(relation, "relation")]
    source = {"sa": rec.sa_attn, "ra": rec.ra_attn, "relations": rec.relations,
              "relations_x_attn": rec.relations, "symbols": rec.symbol_attn}[view]
    if source is None:
        raise AppError(f"{rec.name} has no {view_label.lower()} (e.g. no such heads, an RCA layer, or no symbolic "
                       "attention)")
    count = {"sa": rec.sa_attn, "ra": rec.ra_attn}.get(view)
    if heads is not None and count is not None and heads[0] >= count.shape[1]:
        raise AppError(f"{rec.name} has {count.shape[1]} {view_label.lower()} heads (0-{count.shape[1] - 1})")
    if relations is not None and view.startswith("relations") and relations[0] >= rec.relations.shape[-1]:
        raise AppError(f"{rec.name} has {rec.relations.shape[-1]} relations (0-{rec.relations.shape[-1] - 1})")
    rh = _index(ra_head, "RA head") or 0
    if view == "relations_x_attn" and rh >= rec.ra_attn.shape[1]:
        raise AppError(f"{rec.name} has {rec.ra_attn.shape[1]} RA heads (0-{rec.ra_attn.shape[1] - 1})")
    try:
        fig = layer_figure(rec, view, result["labels"], heads=heads, relations=relations,
                           postprocess=postprocess or "None", scale=float(scale or 1.0), ra_head=rh,
                           model_name=model_name)
    except ValueError as e:
        raise AppError(str(e)) from None
    if fig is None:
        raise AppError(f"{rec.name} has nothing to show for {view_label}")
    return fig


def token_table(result: dict[str, Any] | None, layer) -> list[list]:
    """Rows ``[position, token, symbol of head 0, ...]`` (symbol = argmax library index, or position)."""
    if result is None:
        return []
    layers = result["analysis"].layers
    li = _index(layer, "layer") or 0
    ids = layers[li].symbol_ids if 0 <= li < len(layers) else None
    rows = []
    for pos, label in enumerate(result["labels"]):
        row: list[Any] = [pos, label]
        if ids is not None:
            row.extend(int(v) for v in ids[0, :, pos].tolist())
        rows.append(row)
    return rows


def _table_headers(result: dict[str, Any] | None, layer) -> list[str]:
    headers = ["position", "token"]
    if result is None:
        return headers
    layers = result["analysis"].layers
    li = _index(layer, "layer") or 0
    ids = layers[li].symbol_ids if 0 <= li < len(layers) else None
    if ids is not None:
        headers += [f"symbol (head {h})" for h in range(ids.shape[1])]
    return headers


def bertviz_maps(result: dict[str, Any], view_label: str, postprocess: str, scale: float, ra_head) -> list:
    """Per-layer ``(1, K, n, n)`` maps of the chosen view, ``[b, k, i = from, j = to]`` as bertviz expects."""
    from dual_attention.model_analysis.postprocess import postprocess_relations, scale_by_attention

    view = VIEWS.get(view_label)
    maps = []
    for rec in result["analysis"].layers:
        if view in ("sa", "ra"):
            m = rec.sa_attn if view == "sa" else rec.ra_attn
        elif view in ("relations", "relations_x_attn") and rec.relation_maps is not None:
            m = postprocess_relations(rec.relation_maps, postprocess or "None", float(scale or 1.0), rec.causal)
            if view == "relations_x_attn":
                m = scale_by_attention(m, rec.ra_attn[:, _index(ra_head, "RA head") or 0])
        else:
            m = None
        if m is None:
            raise AppError(f"bertviz shows attention-like maps; {rec.name} has no {view_label.lower()}")
        maps.append(m.float().cpu())
    return maps


def bertviz_html(result: dict[str, Any] | None, view_label: str, kind: str, postprocess: str = "None",
                 scale: float = 1.0, ra_head=0) -> str:
    """The bertviz head view (``kind='Head view'``) or model view of the chosen maps, as an HTML page."""
    if result is None:
        raise AppError("run a forward pass first")
    try:
        from bertviz import head_view, model_view
    except ImportError:
        raise AppError("bertviz is not installed: pip install bertviz") from None
    maps = bertviz_maps(result, view_label, postprocess, scale, ra_head)
    fn = head_view if kind == "Head view" else model_view
    out = fn(attention=maps, tokens=list(result["labels"]), html_action="return")
    return getattr(out, "data", str(out))


def _choices(dims: dict[str, Any] | None) -> dict[str, list[str]]:
    """The options of the view, layer, head, relation and RA-head controls for a model of ``dims``."""
    if dims is None:
        return dict(views=list(VIEWS), layers=["0"], heads=[ALL], relations=[ALL], ra_heads=["0"])
    return dict(views=dims["views"] or list(VIEWS), layers=[str(i) for i in range(dims["n_layers"])],
                heads=[ALL] + [str(h) for h in range(max(dims["sa"], dims["ra"]))],
                relations=[ALL] + [str(r) for r in range(dims["relations"])],
                ra_heads=[str(h) for h in range(max(dims["ra"], 1))])


def _default_view(views: list[str]) -> str:
    return "Relations" if "Relations" in views else views[0]


class _VisualizerApp(AppBase):
    """The page and its event handlers (one instance per built app; the model store is shared by its sessions)."""

    def __init__(self, model: str | None, device: str | None, max_tokens: int) -> None:
        super().__init__(model, device)
        self.max_tokens = max_tokens

    def _model_name(self, key) -> str:
        try:
            return type(self.store.get(key).model).__name__.removesuffix("_HFHub")
        except AppError:
            return ""

    def _table(self, result, layer):
        return self.gr.Dataframe(value=token_table(result, layer), headers=_table_headers(result, layer))

    def load_model(self, source, current_key):
        gr = self.gr
        key, status, loaded = self.load_status(source, current_key)
        if loaded is None:
            return (key, status) + (gr.skip(),) * 7
        c = _choices(model_dims(loaded.model))
        return (key, status, gr.Radio(choices=c["views"], value=_default_view(c["views"])),
                gr.Dropdown(choices=c["layers"], value="0"), gr.Dropdown(choices=c["heads"], value=ALL),
                gr.Dropdown(choices=c["relations"], value=ALL), gr.Dropdown(choices=c["ra_heads"], value="0"),
                None, None)

    def forward(self, key, prompt, view, layer, head, relation, ra_head, post, scale):
        skip = self.gr.skip
        try:
            result = run_analysis(self.store.get(key), prompt, self.device, self.max_tokens)
        except AppError as e:
            return skip(), message(str(e), "error"), skip(), skip()
        except Exception as e:  # noqa: BLE001 - keep serving; show what went wrong
            return skip(), message(f"forward pass failed: {type(e).__name__}: {e}", "error"), skip(), skip()
        n = len(result["labels"])
        table = self._table(result, layer)
        try:
            fig = render_view(result, view, layer, head, relation, ra_head, post, scale, self._model_name(key))
            note = message(f"forward pass done: {n} tokens, {len(result['analysis'].layers)} layers", "ok")
        except AppError as e:
            fig, note = None, message(f"forward pass done ({n} tokens); {e}", "warning")
        return result, note, fig, table

    def rerender(self, key, result, view, layer, head, relation, ra_head, post, scale):
        if result is None:
            return self.gr.skip(), self.gr.skip(), self.gr.skip()
        table = self._table(result, layer)
        try:
            fig = render_view(result, view, layer, head, relation, ra_head, post, scale, self._model_name(key))
        except AppError as e:
            return None, message(str(e), "warning"), table
        return fig, message(f"{view}, layer {layer}", "info"), table

    def make_bertviz(self, result, view, kind, post, scale, ra_head):
        try:
            page = bertviz_html(result, view, kind, post, scale, ra_head)
        except AppError as e:
            return self.gr.skip(), None, message(str(e), "error")
        path = Path(tempfile.mkdtemp(prefix="dat-bertviz-")) / "bertviz.html"
        path.write_text(page, encoding="utf-8")
        srcdoc = page.replace("&", "&amp;").replace('"', "&quot;")
        frame = f'<iframe srcdoc="{srcdoc}" style="width:100%;height:720px;border:0"></iframe>'
        return frame, str(path), message(f"bertviz {kind.lower()} of {view.lower()}", "ok")

    def view_controls(self) -> SimpleNamespace:
        """What to show: view, layer, head, relation, RA head, relation post-processor and scale."""
        gr = self.gr
        init = _choices(None if self.initial is None else model_dims(self.initial.model))
        view = gr.Radio(init["views"], value=_default_view(init["views"]), label="Show", elem_id="view")
        with gr.Row():
            layer = gr.Dropdown(init["layers"], value="0", label="Layer", elem_id="layer")
            head = gr.Dropdown(init["heads"], value=ALL, label="Head (SA/RA views)", elem_id="head")
        with gr.Row():
            relation = gr.Dropdown(init["relations"], value=ALL, label="Relation", elem_id="relation")
            ra_head = gr.Dropdown(init["ra_heads"], value="0", label="RA head (for Relations × RA)",
                                  elem_id="ra-head")
        with gr.Row():
            post = gr.Dropdown(list(RELATION_POSTPROCESSORS), value="None", label="Relation post-processor",
                               elem_id="postprocess")
            scale = gr.Slider(0.1, 50.0, value=1.0, step=0.1, label="Relation scale factor", elem_id="scale")
        return SimpleNamespace(view=view, layer=layer, head=head, relation=relation, ra_head=ra_head, post=post,
                               scale=scale)

    def bertviz_section(self, result_state, c: SimpleNamespace) -> None:
        """The bertviz accordion: view kind, button, the page and its file."""
        gr = self.gr
        with gr.Accordion("bertviz: interactive head and model views", open=False):
            kind = gr.Radio(["Head view", "Model view"], value="Head view", label="bertviz view")
            viz_btn = gr.Button("Build bertviz view", elem_id="bertviz-button")
            viz_note = gr.Markdown("")
            viz_html = gr.HTML(elem_id="bertviz")
            viz_file = gr.File(label="bertviz HTML")
        viz_btn.click(self.make_bertviz, [result_state, c.view, kind, c.post, c.scale, c.ra_head],
                      [viz_html, viz_file, viz_note])

    def page(self):
        """The ``gr.Blocks``: checkpoint, prompt and view controls on the left, heat map and tokens on the right."""
        gr = self.gr
        has_bertviz = importlib.util.find_spec("bertviz") is not None
        with gr.Blocks(title=TITLE) as app:
            gr.Markdown(f"# {TITLE}\nHeat maps of a Dual Attention Transformer language model's heads "
                        "([arXiv:2405.16727](https://arxiv.org/abs/2405.16727)). Rows are receivers i (queries), "
                        "columns senders j (keys); relation maps show r(x_i, x_j); the unused future (j > i) is grey.")
            model_state, result_state = gr.State(self.initial_key), gr.State(None)
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    model_box, load_btn, status = self.model_panel()
                    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="the cat sat on the mat",
                                        elem_id="prompt")
                    run_btn = gr.Button("Run forward pass", variant="primary", elem_id="run-button")
                    c = self.view_controls()
                with gr.Column(scale=2):
                    note = gr.Markdown("", elem_id="run-status")
                    plot = gr.Plot(label="Heat map", format="png", elem_id="heatmap")
                    table = gr.Dataframe(headers=["position", "token"], label="Tokens and retrieved symbols (argmax)",
                                         interactive=False, elem_id="token-table")
            if has_bertviz:
                self.bertviz_section(result_state, c)
            self.machine_info(" · bertviz available" if has_bertviz else " · install bertviz for its interactive views")

            controls = [c.view, c.layer, c.head, c.relation, c.ra_head, c.post, c.scale]
            load_outputs = [model_state, status, *controls[:5], result_state, plot]
            for trigger in (load_btn.click, model_box.submit):
                trigger(self.load_model, [model_box, model_state], load_outputs)
            for trigger in (run_btn.click, prompt.submit):
                trigger(self.forward, [model_state, prompt, *controls], [result_state, note, plot, table])
            for control in controls:
                control.change(self.rerender, [model_state, result_state, *controls], [plot, note, table])
        return app


def build_app(model: str | None = None, device: str | None = None, *, max_tokens: int = 256):
    """Build the app (a ``gr.Blocks``); ``model`` (a path or Hub id) is loaded now, errors shown in the page."""
    return _VisualizerApp(model, device, max_tokens).page()


def _headless_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")  # the app draws from worker threads: no GUI backend


def main(argv: list[str] | None = None) -> int:
    return serve("python -m dual_attention.model_analysis.lm_visualization_app", TITLE, build_app, argv,
                 setup=_headless_matplotlib)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
