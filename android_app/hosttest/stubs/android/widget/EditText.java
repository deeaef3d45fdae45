package android.widget;

import android.text.Editable;

public class EditText extends TextView {
    public EditText() { throw new RuntimeException("Stub!"); }
    @Override public Editable getText() { throw new RuntimeException("Stub!"); }
}
