// Submit the dashboard's tenant filter when the selection changes (an external file: the admin's
// Content-Security-Policy allows no inline event handlers).
document.addEventListener("DOMContentLoaded", function () {
  var select = document.getElementById("id_tenant");
  if (select && select.form) {
    select.addEventListener("change", function () { select.form.submit(); });
  }
});
