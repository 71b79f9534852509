/* lowrank-lens report: draws every figure of the page with the bundled Plotly (assets/plotly.min.js), offline.
   Each <figure class="ifig"> holds its Plotly figure as JSON (a <script type="application/json">). A trace's
   meta names its methods (a pair's two) and view: it is shown when its view is the one selected in the figure's selector (if
   the figure has views) and none of its methods is unticked in the page's method filter. A legend click hides
   (or shows again) the clicked legend group in that one figure; the script keeps that choice per figure, so it
   holds across views and filter changes (Plotly's double-click isolation is off: one click, one group). */
(function () {
  'use strict';
  var hidden = {};

  function shown(meta, view) {
    var methods = meta.methods || [];
    for (var i = 0; i < methods.length; i++) if (hidden[methods[i]]) return false;
    return !(meta.view && view && meta.view !== view);
  }

  function visibility(div) {
    var view = div.getAttribute('data-view') || '';
    var off = div.__legendOff || {};
    return div.data.map(function (t) {
      if (!shown(t.meta || {}, view)) return false;
      return off[t.legendgroup] ? 'legendonly' : true;
    });
  }

  function refresh(div) {
    if (div.data) Plotly.restyle(div, {visible: visibility(div)});
  }

  function draw(fig) {
    var spec = JSON.parse(fig.querySelector('script.spec').textContent);
    var div = fig.querySelector('.plot');
    var select = fig.querySelector('select.view');  // as the browser restored it (back/forward keeps controls)
    var view = select ? select.value : (spec.views.length ? spec.views[0] : '');
    div.setAttribute('data-view', view);
    spec.data.forEach(function (t) { t.visible = shown(t.meta || {}, view); });
    div.__legendOff = {};
    return Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false}).then(function () {
      div.on('plotly_legendclick', function (ev) {
        var group = ev.data[ev.curveNumber].legendgroup;
        div.__legendOff[group] = !div.__legendOff[group];
        refresh(div);
        return false;  // the script applies it, to every view of the figure
      });
      div.on('plotly_legenddoubleclick', function () { return false; });
      fig.setAttribute('data-rendered', '1');
    });
  }

  function start() {
    var figs = Array.prototype.slice.call(document.querySelectorAll('figure.ifig'));
    figs.forEach(function (fig) {
      var select = fig.querySelector('select.view');
      if (select) select.addEventListener('change', function () {
        var div = fig.querySelector('.plot');
        div.setAttribute('data-view', select.value);
        refresh(div);
      });
    });
    document.querySelectorAll('.method-filter input[type=checkbox]').forEach(function (box) {
      hidden[box.value] = !box.checked;  // a box the browser restored unticked hides its method from the start
      box.addEventListener('change', function () {
        hidden[box.value] = !box.checked;
        figs.forEach(function (fig) { refresh(fig.querySelector('.plot')); });
      });
    });
    var done = figs.map(draw);
    Promise.all(done).then(function () {
      // the browser restores form controls (reload, back/forward) once the page has loaded: draw what they
      // say, then tell the reader (and the tests) the figures are ready
      var finish = function () {
        sync(figs);
        document.body.setAttribute('data-figures-rendered', String(figs.length));
      };
      if (document.readyState === 'complete') finish(); else window.addEventListener('load', finish);
    });
    window.addEventListener('pageshow', function () { sync(figs); });
  }

  function sync(figs) {
    document.querySelectorAll('.method-filter input[type=checkbox]').forEach(function (box) {
      hidden[box.value] = !box.checked;
    });
    figs.forEach(function (fig) {
      var select = fig.querySelector('select.view'), div = fig.querySelector('.plot');
      if (select) div.setAttribute('data-view', select.value);
      refresh(div);
    });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
